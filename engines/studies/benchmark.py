"""A benchmark table as RULER reports it: tasks x lengths, each cell the mean of its samples' scores x 100
(string_match_all gives partial credit per sample), an average row over the tasks, and the effective
length at RULER's threshold of 85.6 (Llama-2-7B's average at 4K in the RULER paper)."""
from __future__ import annotations

import csv
import io

RULER_THRESHOLD = 85.6
RULES = ("Each cell: the mean over its samples of the task's metric x 100 (RULER's string_match_all: the share of "
         "expected values found in the answer, partial credit), rounded to 2 places. Average: the mean over the "
         "tasks at that length. Effective length: the longest length at which the average, and the average at every "
         f"shorter length, is at least the threshold ({RULER_THRESHOLD}, RULER's; a depth does not apply: each "
         "sample's depths are drawn by its seed).")


def benchmark_table(rows_by_task: dict[str, list[dict]], threshold: float = RULER_THRESHOLD) -> dict:
    """The table from each task's finished sweep cells (rows with length and score)."""
    lengths = sorted({int(row["length"]) for rows in rows_by_task.values() for row in rows})
    scores: dict[str, dict[int, float | None]] = {}
    for task, rows in rows_by_task.items():
        scores[task] = {}
        for length in lengths:
            values = [100 * row["score"] for row in rows if int(row["length"]) == length]
            scores[task][length] = round(sum(values) / len(values), 2) if values else None
    average = {}
    for length in lengths:
        values = [by_length[length] for by_length in scores.values() if by_length[length] is not None]
        average[length] = round(sum(values) / len(values), 2) if values else None
    effective = None
    for length in lengths:
        if average[length] is None or average[length] < threshold:
            break
        effective = length
    return {"lengths": lengths, "scores": scores, "average": average, "effective_length": effective,
            "threshold": threshold, "rules": RULES}


def table_rows(table: dict) -> list[list]:
    """Header row, one row per task, then the average: what the CSV and the UI's table show."""
    def cell(value):
        return "" if value is None else value

    return ([["task", *table["lengths"]]]
            + [[task, *(cell(by_length[n]) for n in table["lengths"])] for task, by_length in table["scores"].items()]
            + [["average", *(cell(table["average"][n]) for n in table["lengths"])]])


def table_csv(table: dict) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table_rows(table))
    return out.getvalue()
