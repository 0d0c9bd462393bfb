"""The COCO caption toolkit's own table, for ``evaluate.py --official``: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE.

The project's metrics (``metrics.py``) reimplement the toolkit's BLEU, ROUGE-L and CIDEr-D without Java.
METEOR and SPICE are Java programs that ship with the toolkit (``pycocoevalcap``), and its PTB
tokenizer is Java too, so the whole table needs ``pip install pycocoevalcap`` and a Java runtime. The
toolkit is imported only here and only when asked for: the runtime requirements stay five packages.

SPICE parses every caption with Stanford CoreNLP 3.6.0, whose two jars (about 400 MB) pycocoevalcap
downloads from nlp.stanford.edu into its ``spice/lib`` folder the first time. Offline that cannot
happen: when the jars are absent SPICE is reported as unavailable, with the reason, and not started.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

TOOLKIT_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")
INSTALL = ("pip install pycocoevalcap, and a Java runtime (Debian/Ubuntu: apt-get install default-jre-headless; "
           "the java command must be on the PATH)")
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class ToolkitUnavailable(FileNotFoundError):
    """pycocoevalcap or the Java runtime it needs is not installed."""


def check_toolkit() -> None:
    """Raise ToolkitUnavailable, saying what to install, unless pycocoevalcap and ``java`` are both there."""
    missing = []
    if importlib.util.find_spec("pycocoevalcap") is None:
        missing.append("the COCO caption toolkit (Python package pycocoevalcap)")
    if shutil.which("java") is None:
        missing.append("a Java runtime (no java command on the PATH)")
    if missing:
        raise ToolkitUnavailable(f"--official needs {' and '.join(missing)}: {INSTALL}")


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here (its CoreNLP jars are missing), or None when it can be tried."""
    spec = importlib.util.find_spec("pycocoevalcap.spice")
    lib = Path(spec.origin).parent / "lib" if spec and spec.origin else None
    if lib is None or not all((lib / jar).is_file() for jar in CORENLP_JARS):
        return (f"SPICE needs Stanford CoreNLP 3.6.0 ({' and '.join(CORENLP_JARS)}) in {lib}, which pycocoevalcap "
                "downloads from nlp.stanford.edu on first use; this machine has no copy. Run once with internet: "
                "python -c 'from pycocoevalcap.spice.spice import Spice; Spice()'")
    return None


def official_scores(references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str]) -> dict:
    """Score raw captions with the toolkit as its ``COCOEvalCap`` does: PTB-tokenize, then each scorer.

    Returns ``{"scores": {metric: value or None}, "unavailable": {metric: reason}}`` over
    ``TOOLKIT_METRICS``; a scorer that cannot run (SPICE offline, or a Java failure) is None with its
    reason, and the others are still computed. Raises ToolkitUnavailable when the toolkit or Java is missing.
    """
    check_toolkit()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = list(references)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": hypotheses[i]}] for i in ids})
    scores, unavailable = dict.fromkeys(TOOLKIT_METRICS), {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"BLEU-{k + 1}": float(b) for k, b in enumerate(bleu)})
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    scorers = {"METEOR": lambda: Meteor().compute_score(gts, res)[0]}
    spice_reason = spice_unavailable_reason()
    if spice_reason is None:
        from pycocoevalcap.spice.spice import Spice
        scorers["SPICE"] = lambda: Spice().compute_score(gts, res)[0]
    else:
        unavailable["SPICE"] = spice_reason
    for name, score in scorers.items():
        try:
            scores[name] = float(score())
        except (OSError, ValueError, AssertionError, subprocess.CalledProcessError) as e:
            unavailable[name] = f"the toolkit's {name} failed: {e}"
    return {"scores": scores, "unavailable": unavailable}


def official_table(own: Mapping[str, float], official: dict) -> str:
    """The toolkit's whole table beside the project's own scores; "-" where a side has no value."""
    lines = [f"{'':10}{'project':>10}{'toolkit':>10}"]
    for name in TOOLKIT_METRICS:
        mine, theirs = own.get(name), official["scores"][name]
        cells = [f"{v:10.4f}" if v is not None else f"{'-':>10}" for v in (mine, theirs)]
        lines.append(f"{name:10}{''.join(cells)}")
    lines += [f"{name} unavailable: {reason}" for name, reason in official["unavailable"].items()]
    return "\n".join(lines)
