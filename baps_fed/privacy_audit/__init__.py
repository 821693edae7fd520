"""The privacy audit an ethics board can run (``baps-fed privacy-audit``).

Two questions, two audits:
- "can someone tell that this patient was in the training set?": membership inference on what
  the coordinator sees of a site (``candidates``, ``site_runs``, ``views``, ``membership``), scored
  as ROC AUC and TPR at low FPR with bootstrap intervals (``roc``);
- "is the epsilon you print true?": the one-run canary audit of the DP mechanism on SPSA's
  scalars (``canary_audit``), turned into an empirical epsilon lower bound
  (``one_run_bound``) and compared with the accountant's epsilon.

``runner`` ties them to a scenario; ``report`` writes the run folder: its tables and
ROC plots.
"""
