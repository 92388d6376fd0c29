"""``fal-label``: the file oracle's command: show what is pending, import a filled CSV.

A site whose node config says ``oracle="file"`` gets, per query, a folder with
the samples and a ``labels.csv`` to fill in (``client_app.oracles.file``).

    fal-label status [--state-dir DIR] [--run-name NAME]
    fal-label import labels.csv [--state-dir DIR] [--labeler NAME]

``import`` checks the whole file against the site's ledger first and writes
nothing if anything is wrong: the CSV must be for a query that is pending,
every ``sample_id`` must be one that query chose, every label valid (a class
index in range, a number for regression, or ``skip``/``unclear``), and no
label already bought or imported may change. The answers go to
``answers.json`` in the query's folder; the ClientApp records them in its
ledger at the server's next poll.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from client_app.labeling import LabelError, is_skip, parse_label
from client_app.ledger import LabelLedger, LedgerError, utc_now
from client_app.oracles.file import ANSWERS_FILE, ID_COLUMNS, read_answers
from fal_shared.files import atomic_write_text

__all__ = ["main", "import_csv", "LabelImportError"]


class LabelImportError(ValueError):
    """The CSV cannot be imported; the message lists every problem."""


def _ledger_paths(state_dir: Path, run_name: str | None) -> list[Path]:
    pattern = f"{run_name}/partition-*.json" if run_name else "*/partition-*.json"
    return sorted(p for p in state_dir.glob(pattern) if p.stem.split("-")[-1].isdigit())


def status(state_dir: Path, run_name: str | None = None) -> list[dict[str, Any]]:
    """One row per pending query under ``state_dir``."""
    rows = []
    for path in _ledger_paths(state_dir, run_name):
        ledger = LabelLedger(path)
        for token, query in ledger.pending_queries().items():
            folder = query.get("tool", {}).get("folder")
            imported = 0
            if folder:
                answered = read_answers(Path(folder))["answers"]
                imported = sum(1 for i in query["ids"] if str(i) in answered)
            rows.append({
                "run": path.parent.name, "partition": int(path.stem.split("-")[-1]), "query": token,
                "pending": len(query["ids"]), "imported": imported, "oracle": query.get("oracle", ""),
                "where": folder or json.dumps(query.get("tool", {})), "requested": query.get("requested", ""),
            })
    return rows


def import_csv(csv_path: Path, state_dir: Path, *, labeler: str = "") -> dict[str, int]:
    """Validate ``csv_path`` against the site's ledger and add its answers to the query's ``answers.json``.

    Raises
    ------
    LabelImportError
        Listing every problem; nothing is written then.
    """
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LabelImportError(f"{csv_path}: cannot read it as a CSV ({err})") from None
    missing = [c for c in (*ID_COLUMNS, "label") if c not in columns]
    if missing:
        raise LabelImportError(f"{csv_path}: missing column(s) {', '.join(missing)} (fill in the labels.csv the site wrote)")
    if not rows:
        raise LabelImportError(f"{csv_path}: no rows")
    queries = sorted({(r["run"], r["partition"], r["query"]) for r in rows})
    if len(queries) > 1:
        raise LabelImportError(f"{csv_path}: rows for several queries {queries}; import one query's CSV at a time")
    run, partition, token = queries[0]
    ledger_path = state_dir / run / f"partition-{partition}.json"
    if not ledger_path.exists():
        raise LabelImportError(
            f"{csv_path} is for run {run!r} partition {partition}, but {ledger_path} does not exist "
            "(is --state-dir the node's state-dir?)"
        )
    ledger = LabelLedger(ledger_path)
    pending = ledger.pending_queries()
    if token not in pending:
        others = ", ".join(pending) or "none"
        why = "is already fully labeled" if ledger.purchase(token) is not None else "was never asked"
        raise LabelImportError(
            f"{csv_path} is for query {token!r} of run {run!r} partition {partition}, which {why}; "
            f"pending queries there: {others}"
        )
    query = pending[token]
    if query.get("oracle") != "file":
        raise LabelImportError(f"query {token!r} is labeled with {query.get('oracle')!r}, not with files (fal-label)")
    task, num_classes = str(query["task"]), int(query["num-classes"])
    chosen = set(ledger.purchase(token).tolist())
    folder = Path(query["tool"]["folder"])
    answers = read_answers(folder)
    problems, new = [], {}
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"row {n}"
        try:
            sid = int(str(row["sample_id"]).strip())
        except ValueError:
            problems.append(f"{where}: sample_id {row['sample_id']!r} is not an integer")
            continue
        where = f"row {n} (sample {sid})"
        if sid not in chosen:
            problems.append(f"{where}: unknown sample id, query {token!r} did not choose it")
            continue
        raw = (row.get("label") or "").strip()
        if raw == "":
            continue  # not labeled yet: stays pending
        who = (row.get("labeler") or "").strip() or labeler
        if is_skip(raw):
            answer = {"value": None, "skipped": True, "reason": raw.lower(), "by": who, "at": utc_now()}
        else:
            try:
                answer = {"value": parse_label(raw, task, num_classes), "skipped": False, "by": who, "at": utc_now()}
            except LabelError as err:
                problems.append(f"{where}: bad label: {err}")
                continue
        note = (row.get("note") or "").strip()
        if note:
            answer["note"] = note
        bought = ledger.label_of(sid)
        if bought is not None or sid in {s.sample_id for s in ledger.skipped()}:
            if bought is None or answer["skipped"] or float(answer["value"]) != bought.label:
                old = f"label {bought.label:g}" if bought is not None else "a skip"
                problems.append(f"{where}: already bought as {old}; a bought label is never changed")
            continue
        before = answers["answers"].get(str(sid))
        if before is not None and (before.get("skipped"), before.get("value")) != (answer["skipped"], answer["value"]):
            old = "skip" if before.get("skipped") else f"label {before.get('value'):g}"
            problems.append(f"{where}: already imported as {old} (not yet collected); an imported label is not changed")
            continue
        if before is None:
            new[str(sid)] = answer
    if problems:
        raise LabelImportError(f"{csv_path}: nothing imported, {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    answers["answers"].update(new)
    answers.update(run=run, partition=int(partition), query=token)
    atomic_write_text(folder / ANSWERS_FILE, json.dumps(answers, indent=1))
    skipped = sum(1 for a in new.values() if a["skipped"])
    still = len(set(ledger.pending_ids(token).tolist()) - {int(k) for k in answers["answers"]})
    return {"labels": len(new) - skipped, "skipped": skipped, "still-pending": still}


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fal-label", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    default_state = str(Path.home() / ".fal-state")
    st = sub.add_parser("status", help="list the queries whose labels are pending at this site")
    st.add_argument("--state-dir", default=default_state, help="the node's state-dir (default: ~/.fal-state)")
    st.add_argument("--run-name", default=None)
    im = sub.add_parser("import", help="import a filled labels.csv")
    im.add_argument("csv", type=Path)
    im.add_argument("--state-dir", default=default_state, help="the node's state-dir (default: ~/.fal-state)")
    im.add_argument("--labeler", default=os.environ.get("USER", ""), help="who labeled, for rows without a labeler (default: $USER)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state_dir = Path(args.state_dir).expanduser()
    try:
        if args.command == "status":
            rows = status(state_dir, args.run_name)
            if not rows:
                print(f"no pending labels under {state_dir}")
            for r in rows:
                print(f"{r['run']} partition {r['partition']} {r['query']}: {r['pending']} pending "
                      f"({r['imported']} imported, not yet collected) since {r['requested']}, {r['oracle']}: {r['where']}")
            return 0
        done = import_csv(args.csv, state_dir, labeler=args.labeler)
    except (LabelImportError, LedgerError) as err:
        print(f"fal-label: {err}", file=sys.stderr)
        return 1
    print(f"imported {done['labels']} label(s) and {done['skipped']} skip(s); {done['still-pending']} still pending. "
          "The site records them at the server's next look (label-poll-seconds).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
