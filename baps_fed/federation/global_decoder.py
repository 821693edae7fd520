"""The federated decoder of a coordinator checkpoint, as an IP decoder ``baps-fed evaluate`` can
score on a hospital's own data.

The checkpoint holds the global decoder's parameters and the run's settings; the decoder's fixed
parts (frozen encoder, random features) are built from those settings, as every site built
them. A site's private head never leaves the site, so what is scored is the shared decoder
alone (the report's "global" column).
"""

from __future__ import annotations

from pathlib import Path

from baps_fed.federation.checkpoint import CHECKPOINT, read_checkpoint
from baps_fed.federation.contract import FedTrainConfig
from baps_fed.method.ip_decoder import IPDecoder, build_decoder, load_decoder


def global_decoder(path: Path) -> tuple[IPDecoder, FedTrainConfig]:
    """The decoder a coordinator checkpoint holds, and its run's settings; a cut or altered
    file, non-finite values or parameters of another architecture are refused naming it."""
    state = read_checkpoint(path)
    try:
        train = FedTrainConfig.from_flat(state.config["train"])
        decoder = build_decoder(train.decoder_config())
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise ValueError(
            f"{path}: its run settings do not describe a decoder this installation can build "
            f"({type(err).__name__}: {err}); score it with the baps-fed version that made it"
        ) from None
    if state.theta.shape != (decoder.num_params,):
        raise ValueError(
            f"{path}: its decoder has {state.theta.size} parameters, but the {train.preset!r} "
            f"decoder its run settings describe has {decoder.num_params}: the file was altered "
            "or made by another baps-fed version"
        )
    decoder.set_theta(state.theta)
    return decoder, train


def decoder_to_score(path: Path) -> tuple[IPDecoder, str]:
    """What ``baps-fed evaluate --checkpoint`` scores, and the prompt kind it was trained with:
    a coordinator checkpoint (``.npz``: the federated decoder) or a decoder ``train`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such checkpoint (train writes best.pt, a coordinator {CHECKPOINT})"
        )
    if path.suffix == ".npz":
        decoder, train = global_decoder(path)
        return decoder, train.prompt
    decoder, extra = load_decoder(path)
    return decoder, extra.get("train_config", {}).get("step", {}).get("prompt", {}).get(
        "kind", "point"
    )
