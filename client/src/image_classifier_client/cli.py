"""classify: photos to the image classifier, a table (or JSON) of each one's best classes.

    classify cat.jpg coffee.jpg --url http://127.0.0.1:8080 --model efficientnet_lite0 \\
        --key-file run/key_file.json [--top-k 5] [--protocol v2] [--json]

The bearer key comes from --key-file (TorchServe's key_file.json, read again when it changes),
or $IMAGE_CLASSIFIER_KEY, or $IMAGE_CLASSIFIER_KEY_FILE; never from the command line, where
every local user can read it.

Exit status: 0 every photo classified; 1 a photo unreadable; 2 usage; 3 a photo refused (4xx,
the server's message printed); 4 key refused; 5 overloaded (503); 6 unavailable (no answer
within the retry budget); 7 server error. A refused photo does not stop the others; the first
failure's status is the exit status. Anything about the server (4-7) stops at once.
"""

from __future__ import annotations

import argparse
import json
import sys

from image_classifier_client import errors
from image_classifier_client.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, Client
from image_classifier_client.contract import RetryPolicy
from image_classifier_client.results import Classification

UNREADABLE = 1


def parse_args(argv: list | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="classify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"inference API (default {DEFAULT_URL})")
    parser.add_argument("--model", required=True, help="the model's name, e.g. efficientnet_lite0")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per photo (default 5; "
                        "the server's top_k is the most)")
    parser.add_argument("--protocol", choices=("v1", "v2"), default="v1",
                        help="v1: /predictions/NAME; v2: the Open Inference Protocol (default v1)")
    parser.add_argument("--key-file", help="TorchServe's key_file.json (e.g. run/key_file.json)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds per attempt (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--retries", type=int, default=RetryPolicy().resends,
                        help="resends of a lost request (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON array instead of tables")
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.retries < 0 or args.timeout <= 0:
        parser.error("--top-k must be >= 1, --retries >= 0, --timeout > 0")
    return args


def table(name: str, result: Classification) -> str:
    rows = [f"{name}  ({result.model} {result.version}, {result.protocol})",
            f"  {'#':>2}  {'index':>5}  {'prob':>7}  label"]
    rows += [f"  {rank:>2}  {p.index:>5}  {p.probability:>7.4f}  {p.label}{'  *' if p.predicted else ''}"
             for rank, p in enumerate(result.predictions, 1)]
    return "\n".join(rows)


def error_entry(name: str, exc: Exception) -> dict:
    return {"file": name, "error": {"kind": type(exc).__name__, "message": str(exc),
                                    "status": getattr(exc, "status", None),
                                    "type": getattr(exc, "error_type", None) or None}}


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    status, entries = 0, []
    retry = RetryPolicy(resends=args.retries)
    with Client(args.url, key_file=args.key_file, timeout=args.timeout, retry=retry,
                protocol=args.protocol) as client:
        for name in args.photos:
            try:
                result = client.classify(name, args.model, top_k=args.top_k)
            except (OSError, errors.ClassifierError) as exc:
                code = exc.exit_code if isinstance(exc, errors.ClassifierError) else UNREADABLE
                status = status or code
                entries.append(error_entry(name, exc))
                if not args.json:
                    print(f"{name}: error: {exc}", file=sys.stderr)
                if code not in (UNREADABLE, errors.ClientError.exit_code):
                    break  # the server's state, not this photo's: the next would fare the same
                continue
            entries.append({"file": name, **result.to_dict()})
            if not args.json:
                print(table(name, result))
    if args.json:
        print(json.dumps(entries, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
