"""The `baps-fed` command on real files."""

from __future__ import annotations

import numpy as np

from baps_fed.cli import main
from baps_fed.data.modalities import make_case
from baps_fed.data.readers import open_dataset


def test_make_data_writes_a_site_the_readers_load_back(tmp_path, capsys):
    out = tmp_path / "site"
    assert (
        main(
            [
                "make-data",
                "--modality",
                "ultrasound",
                "--n",
                "4",
                "--scanner",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "wrote 4 image/mask pairs" in capsys.readouterr().out
    ds = open_dataset(out)
    assert len(ds) == 4 and not ds.problems
    first = make_case("ultrasound", 0, scanner=1)
    np.testing.assert_array_equal(ds[0].image, first.image)  # PNG is lossless
    np.testing.assert_array_equal(ds[0].mask, first.mask)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    code = main(["zero-shot", "--fm", "tiny", "--data", str(tmp_path / "missing")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err
