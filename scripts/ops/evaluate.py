"""Accuracy of a running server: every labelled photo of a folder sent over HTTP to the live
model, top-1 and top-5 with Wilson 95% intervals, errors counted by status, beside the figure
the archive's packaging measured on its --eval-dir (provenance.json's validation.accuracy, as
the workers loaded it). Same photos, same figure: the served pipeline is the packaged one. A
canary rollout checks the new version with it (docs/canary.md).

    python -m scripts.ops.evaluate --eval-dir DIR --model NAME [--workdir run/]

DIR holds the photos and LABELS.tsv (file, class index per line). Exit 0 when every photo was
answered, 1 when some were not (they count as misses), 2 when the evaluation could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import requests

from scripts import repo
from scripts.ops.inspect_mar import running_description
from scripts.ops.labelled import (
    LabelledSetError,
    PhotoFolder,
    Progress,
    Tally,
    describe_figures,
    labelled_folder,
)
from scripts.ops.torchserve_http import TorchServeClient


def evaluate(client: TorchServeClient, model: str, folder: PhotoFolder) -> dict:
    """Send each labelled photo once, in name order; the served figures, the errors by status
    and the packaging figure the loaded archive records (None when it has none)."""
    tally, errors = Tally(), Counter()
    items = folder.labelled()
    progress = Progress(len(items), f"evaluating {model}")
    with requests.Session() as session:
        for _, data, label in items:
            resp = client.predict(model, data, session=session)
            if resp.status_code == 200:
                tally.add([p["index"] for p in resp.json()["predictions"]], label)
            else:
                errors[str(resp.status_code)] += 1
                tally.add([], label)  # an unanswered photo is a miss
            progress.step()
    return {"model": model, "set": folder.describe(), "served": tally.figures(),
            "errors": dict(sorted(errors.items())), "packaged": packaged_figure(client, model)}


def packaged_figure(client: TorchServeClient, model: str) -> dict | None:
    """validation.accuracy of the archive the workers loaded, from their description."""
    described = running_description(client.management_url, model, client.keys.key("management"))
    return described.get("validation", {}).get("accuracy")


def render(report: dict) -> str:
    """The served and packaged figures in one table, and the errors."""
    packaged = report["packaged"]
    lines = [f"{report['model']} on {report['set']['labelled']} labelled photos of {report['set']['folder']}",
             "  " + describe_figures("served now", report["served"])]
    if packaged is None:
        lines.append("  packaged: the archive records no accuracy (packaged without --eval-dir)")
    else:
        same = packaged["set"]["content_sha256"] == report["set"]["content_sha256"]
        lines.append("  " + describe_figures("packaged", packaged["served"])
                     + ("" if same else f" on other photos ({packaged['set']['folder']})"))
    errors = ", ".join(f"{status}: {n}" for status, n in report["errors"].items()) or "none"
    lines.append(f"  errors by status: {errors}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, required=True,
                        help="photos and LABELS.tsv (file<TAB>class index per line)")
    parser.add_argument("--model", default=repo.DEFAULT_MODEL, help="model name on the server")
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="the server's working directory (its config.properties and keys)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    args = parser.parse_args(argv)
    try:
        folder = labelled_folder(args.eval_dir)
        report = evaluate(TorchServeClient.from_workdir(args.workdir, args.timeout), args.model, folder)
    except LabelledSetError as exc:
        print(f"error: --eval-dir: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, requests.RequestException) as exc:
        print(f"error: cannot evaluate {args.model} on the server of {args.workdir}: {exc}; is it "
              f"running (python -m scripts.ops.serve status)?", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
