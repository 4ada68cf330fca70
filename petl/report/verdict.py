"""Verdicts on the paper's claims: paired differences over seeds between arms that learned, with a 95% interval.

`book/claims.yaml` is the protocol: for each claim of the paper's analysis (C1-C6), the comparisons that test it.
A comparison names two arms (points of the protocol's grid files, chosen as a chapter chooses rows: a variant or
{variant, size, scale}), the metric and test split, what the paper reports (`greater`: arm a above arm b;
`close`: a no worse than b by more than a stated margin) and the paper's own two numbers (rows of
data/paper/results.csv). For each comparison, `compare` reads the records and answers, in this order:

1. **pending** when an arm's grid points lack records (records of older method code are never read:
   `petl.runs.load_runs` leaves superseded ones out, so no verdict mixes method code);
2. **did not learn** when an arm has a seed whose dev score is not above the task's no-training baseline by the
   stated margin (classification: the majority class + 10 points on dev; summarization: the lead-1 sentence on
   every test set; translation: copying the source), so an arm that did not learn is never averaged into a verdict;
3. else the difference a - b paired by seed, its mean and Student-t 95% interval (n >= 2 seeds), and the verdict:
   **agrees** when the interval lies on the paper's side (above 0 for `greater`, above -margin for `close`),
   **disagrees** when it lies wholly on the other side, **undecided at n = k** otherwise, with the number of seeds
   that the observed spread says would resolve a difference of the observed size.

Every number comes from the records (and the paper's from results.csv); nothing here is typed in by hand.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from petl.report.paper import paper_text
from petl.report.selection import ROOT, baseline_records, grid_runs, select

CLAIMS = ROOT / "book" / "claims.yaml"
EXPECTATIONS = ("greater", "close")
#: What "learned" means per kind of task (see the module docstring); the margin is in the metric's points.
LEARNED_MARGIN = {"classification": 10.0, "summarization": 0.0, "translation": 0.0}


# --------------------------------------------------------------------------------------------------
# Student-t quantile (no scipy in the environment): the exact CDF for integer degrees of freedom
# (Abramowitz & Stegun 26.7.3-4), inverted by bisection
# --------------------------------------------------------------------------------------------------

def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` (a positive integer) degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    theta = math.atan2(t, math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:                                   # A(t|df) = 2/pi (theta + sin cos (1 + 2/3 cos^2 + ...))
        total, term = 0.0, s * c
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + (total if df > 1 else 0.0))
    else:                                             # A(t|df) = sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        total, term = 0.0, 1.0
        for k in range(df // 2):
            total += term
            term *= c * c * (2 * k + 1) / (2 * k + 2)
        a = s * total
    return 0.5 + 0.5 * a


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p, for 0.5 <= p < 1."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p!r}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclasses.dataclass
class Difference:
    """The paired difference a - b over n seeds: mean, standard deviation and 95% interval (None for n < 2)."""
    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    def text(self, digits: int = 2) -> str:
        if self.low is None:
            return f"{self.mean:+.{digits}f} (n = {self.n}, no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] (n = {self.n})"


def paired_difference(a: dict, b: dict) -> Difference:
    """a - b over the seeds both arms have (seed -> value mappings), with a Student-t 95% interval."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"the arms share no seed (a: {sorted(a)}, b: {sorted(b)})")
    d = [a[s] - b[s] for s in seeds]
    n, mean = len(d), sum(d) / len(d)
    if n < 2:
        return Difference(n, mean, None, None, None)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return Difference(n, mean, sd, mean - half, mean + half)


def seeds_to_resolve(diff: Difference, margin: float = 0.0, most: int = 200) -> int | None:
    """The smallest n at which a difference of the observed mean and spread would have an interval clear of
    -margin (or of 0): how many seeds this comparison needs, if the spread stays as it is. None when the mean is
    on the boundary or there is no spread to go by."""
    if diff.sd is None:
        return None
    distance = abs(diff.mean + margin)
    if distance == 0:
        return None
    if diff.sd == 0:
        return diff.n
    for n in range(2, most + 1):
        if t_quantile(0.975, n - 1) * diff.sd / math.sqrt(n) < distance:
            return n
    return None


def undecided_reason(diff: Difference, margin: float = 0.0, most: int = 200) -> str:
    """What an undecided comparison needs, in words: the seeds that would decide it at the observed spread, or
    why no number of seeds can be named (one seed; a mean that sits on the bound -margin)."""
    if diff.sd is None:
        return "one seed: no spread to go by"
    need = seeds_to_resolve(diff, margin, most)
    if need is not None:
        return f"at this spread about {need} seeds would decide it"
    return (f"the mean difference {diff.mean:+.2f} sits {abs(diff.mean + margin):.2f} from the bound "
            f"{-margin:+.2f}: more than {most} seeds at this spread")


def decide(diff: Difference, expect: str, margin: float = 0.0) -> str:
    """agrees / disagrees / undecided at n = k, for what the paper reports (`greater` or `close`)."""
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect must be one of {', '.join(EXPECTATIONS)}, got {expect!r}")
    bound = 0.0 if expect == "greater" else -margin
    if diff.low is not None and diff.low > bound:
        return "agrees"
    if diff.high is not None and diff.high < bound:
        return "disagrees"
    return f"undecided at n = {diff.n}"


# --------------------------------------------------------------------------------------------------
# Did an arm learn? Its dev (or test) score against the task's no-training baseline, seed by seed
# --------------------------------------------------------------------------------------------------

def task_kind(task: str) -> str:
    from petl import tasks
    spec = tasks.get_task(task)
    if spec.kind == "classification":
        return "classification"
    return "translation" if spec.primary_metric == "bleu" else "summarization"


def learning_bar(run: pd.Series, directory=None, baselines: list | None = None) -> list[tuple[str, str, float, float]]:
    """[(column, baseline name, baseline value, margin)]: what a run must be above to count as having learned,
    the baseline of its task on the very examples the run was scored on plus the margin of `LEARNED_MARGIN`.
    Classification is judged on dev (the majority class on dev), generation on every test split (lead-1, or
    copying the source). A baseline scored on other examples than the run (a run on part of dev) sets no bar.
    `baselines`: the task's baseline records when the caller has read them already (`baseline_records`)."""
    kind = task_kind(run["task"])
    margin = LEARNED_MARGIN[kind]
    bars = []
    for record in baseline_records(run["task"], directory) if baselines is None else baselines:
        if kind == "classification":
            value = record.get("validation", {}).get("accuracy")
            if value is not None and run.get("num_examples.validation") == record.get("validation_examples"):
                bars.append(("dev.accuracy", record["name"], value, margin))
            continue
        metric = run["primary_metric"]
        for split, n in (record.get("examples") or {}).items():
            if run.get(f"num_examples.{split}") == n and metric in record.get(split, {}):
                bars.append((f"{split}.{metric}", record["name"], record[split][metric], margin))
    return bars


def not_learned(run: pd.Series, directory=None, baselines: list | None = None) -> list[str]:
    """Why one run does not count as having learned (`learning_bar`), a line per bar it misses; [] if it learned."""
    bars = learning_bar(run, directory, baselines)
    if not bars:
        return [f"seed {run['seed']}: no baseline record of {run['task']} on these examples (python -m petl.baselines)"]
    problems = []
    for col, name, value, margin in bars:
        score = run.get(col, float("nan"))
        if not score > value + margin:
            plus = f" + {margin:g}" if margin else ""
            problems.append(f"seed {run['seed']}: {col} {score:.1f}, not above {value + margin:.1f} "
                            f"({name} {value:.1f}{plus})")
    return problems


def beside_baseline(record) -> tuple[pd.DataFrame, str]:
    """One run record (`petl.runs.RunRecord`) as the training notebook shows it: its dev (best step) and test
    metrics, its task's extra test sets, and the task's no-training baseline on the very same examples
    (`petl.baselines.on_examples`) as rows below them; and a sentence saying whether it learned by the rule the
    book's verdicts use (`not_learned`: classification 10 points above the majority class on dev, generation
    above lead-1 / copying the source on every test split)."""
    from petl import baselines
    m, row = record.metrics, record.row
    base = baselines.on_examples(row["task"], m["num_examples"])
    ran = {"dev": m["dev"], "test": m["test"], **{k: v for k, v in m.items() if k.startswith("test_")}}
    reference = {f"{base['kind']} {'dev' if split == 'validation' else split}": base[split]
                 for split in ("validation", *base["examples"]) if isinstance(base.get(split), dict)}
    table = pd.DataFrame({**ran, **reference}).T
    table["best_step"] = [m["best_step"] if k in ran else "" for k in table.index]
    problems = not_learned(row, baselines=[base])
    if problems:
        return table, "did not learn (the book's verdicts leave such a run out): " + "; ".join(
            p.split(": ", 1)[1] for p in problems)
    return table, "learned: " + ", ".join(f"{col} {row[col]:.1f} > {name} {value:.1f}" + (f" + {margin:g}" if margin else "")
                                          for col, name, value, margin in learning_bar(row, baselines=[base]))

@dataclasses.dataclass
class Arm:
    """One arm's records: seed -> value of the compared column, and what the learning check found."""
    label: str
    values: dict
    params_pct: float | None
    failed: list[str]          # 'seed 1: dev.accuracy 60.2, not above 70.3 (rt-polarity-majority 60.3 + 10)'


def arm(runs: pd.DataFrame, which, column: str, directory=None) -> Arm | None:
    """The records of one arm (a variant, or {variant, size, scale}) in a grid's runs, or None if it has none."""
    where = {"variant": which} if isinstance(which, str) else dict(which)
    rows = select(runs, **where)
    if rows.empty:
        return None
    labels = sorted(set(rows["label"]))
    if len(labels) > 1:
        raise ValueError(f"{where} names {len(labels)} methods ({', '.join(labels)}); give the size or scale too")
    baselines = {task: baseline_records(task, directory) for task in set(rows["task"])}
    failed = [problem for _, run in rows.iterrows()
              for problem in not_learned(run, directory, baselines[run["task"]])]
    pct = rows["parameters.paper_pct"].mean() if "parameters.paper_pct" in rows else None
    return Arm(labels[0], dict(zip(rows["seed"], rows[column])), pct, failed)


# --------------------------------------------------------------------------------------------------
# The protocol: book/claims.yaml
# --------------------------------------------------------------------------------------------------

def claims(path: str | Path = CLAIMS) -> dict:
    """The protocol file, checked: claim id -> {claim, paper, chapter, comparisons: [...]}."""
    import yaml
    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    for cid, claim in spec.items():
        for key in ("claim", "paper", "chapter", "comparisons"):
            if key not in claim:
                raise ValueError(f"{path}: claim {cid} has no {key!r}")
        for comp in claim["comparisons"]:
            missing = {"what", "grids", "a", "b", "metric", "expect", "paper"} - set(comp)
            if missing:
                raise ValueError(f"{path}: claim {cid}, comparison {comp.get('what', '?')!r}: missing "
                                 f"{sorted(missing)}")
            if comp["expect"] not in EXPECTATIONS:
                raise ValueError(f"{path}: claim {cid}, {comp['what']!r}: expect must be one of "
                                 f"{', '.join(EXPECTATIONS)}, got {comp['expect']!r}")
            if comp["expect"] == "close" and "margin" not in comp:
                raise ValueError(f"{path}: claim {cid}, {comp['what']!r}: a 'close' comparison needs a margin")
    return spec


def _paper(comp: dict) -> str:
    """'94.0 vs 95.2 (-1.20)': the paper's two numbers as it prints them, and their difference."""
    p = comp["paper"]
    texts = [paper_text(p["table"], p[side], p["task"], p["metric"]) for side in ("a", "b")]
    if None in texts:
        raise ValueError(f"data/paper/results.csv has no row for {p}")
    va, vb = (float(t) for t in texts)
    return f"{texts[0]} vs {texts[1]} ({va - vb:+.2f})"


def compare(comp: dict, directory=None) -> list[dict]:
    """The rows of a verdict table for one comparison (see the module docstring): one per test split."""
    splits = comp.get("splits", ["test"])
    variants = [side if isinstance(side, str) else side["variant"] for side in (comp["a"], comp["b"])]
    sel = grid_runs(*comp["grids"], where=variants, directory=directory)       # the two arms' points only
    row = {"comparison": comp["what"], "paper": _paper(comp)}
    if sel.runs.empty:
        return [{**row, "ours": "", "n": 0, "budget": "", "verdict": _pending(sel)}]
    out = []
    for split in splits:
        column = f"{split}.{comp['metric']}"
        a, b = (arm(sel.runs, comp[side], column, directory) for side in ("a", "b"))
        name = f"{comp['what']} ({split})" if len(splits) > 1 else comp["what"]
        out.append({**row, "comparison": name, **_verdict(comp, a, b, sel)})
    return out


def _pending(sel) -> str:
    """'pending: 2 of 6 points have a record; learning rates not chosen yet (xsum_lr.yaml: 3 of 8 sweep points
    have a record)': the arms' grid points, and the stage-1 sweeps their learning rates wait for."""
    have = len(sel.planned) - len(sel.missing)
    text = f"pending: {have} of {len(sel.planned)} points have a record"
    methods = {(Path(wait.sweep_grid).name, repr(sorted((k, v) for k, v in point.items() if k not in ("seed", "lr")))):
               (wait.have, wait.total) for _, point, wait in sel.waiting}        # one entry per method and sweep
    sweeps: dict[str, tuple[int, int]] = {}
    for (name, _), (h, t) in methods.items():
        sweeps[name] = (sweeps.get(name, (0, 0))[0] + h, sweeps.get(name, (0, 0))[1] + t)
    if sweeps:
        text += "; learning rates not chosen yet (" + ", ".join(
            f"{name}: {h} of {t} sweep points have a record" for name, (h, t) in sweeps.items()) + ")"
    for why in sorted({wait.why for _, _, wait in sel.waiting if wait.why}):
        text += f"; {why}"
    return text


def _budget(a: Arm, b: Arm) -> str:
    if a.params_pct is None or b.params_pct is None:
        return ""
    text = f"{a.params_pct:.2f}% vs {b.params_pct:.2f}%"
    low, high = sorted((a.params_pct, b.params_pct))
    if low > 0 and high / low > 1.1:
        text += f" (differ {high / low:.1f}x)"
    return text


def _verdict(comp: dict, a: Arm | None, b: Arm | None, sel) -> dict:
    if a is None or b is None or sel.missing:
        return {"ours": "", "n": 0, "budget": "", "verdict": _pending(sel)}
    budget = _budget(a, b)
    for side in (a, b):
        if side.failed:
            return {"ours": "", "n": len(side.values), "budget": budget,
                    "verdict": f"did not learn: {side.label} ({'; '.join(side.failed)})"}
    diff = paired_difference(a.values, b.values)
    margin = float(comp.get("margin", 0.0))
    verdict = decide(diff, comp["expect"], margin)
    if verdict.startswith("undecided"):
        verdict += f" ({undecided_reason(diff, margin if comp['expect'] == 'close' else 0.0)})"
    return {"ours": diff.text(), "n": diff.n, "budget": budget, "verdict": verdict}


def verdict_table(claim_id: str, path: str | Path = CLAIMS, directory=None, spec: dict | None = None) -> pd.DataFrame:
    """The verdict table a results chapter opens with: one row per comparison (and test split) of a claim.
    `spec`: the protocol when the caller has read it already (`claims`)."""
    spec = claims(path) if spec is None else spec
    if claim_id not in spec:
        raise KeyError(f"no claim {claim_id!r} in {path}; claims: {', '.join(spec)}")
    rows = [row for comp in spec[claim_id]["comparisons"] for row in compare(comp, directory)]
    return pd.DataFrame(rows, columns=["comparison", "paper", "ours", "n", "budget", "verdict"])


def claim_verdict(table: pd.DataFrame) -> str:
    """A claim's verdict from its comparisons': agrees / disagrees only when every comparison does; 'mixed' when
    decided ones split, with the count of each verdict ('mixed: 1 agrees, 1 disagrees, 4 pending'); else 'not
    decided' with the same counts."""
    verdicts = [v.split(":")[0].split(" at ")[0] for v in table["verdict"]]
    if verdicts and all(v == "agrees" for v in verdicts):
        return "agrees"
    if verdicts and all(v == "disagrees" for v in verdicts):
        return "disagrees"
    counts = ", ".join(f"{n} {what}" for what, n in pd.Series(verdicts).value_counts(sort=False).items())
    decided = {v for v in verdicts if v in ("agrees", "disagrees")}
    return f"mixed: {counts}" if len(decided) > 1 else f"not decided ({counts})"


def verdict_summary(path: str | Path = CLAIMS, directory=None) -> pd.DataFrame:
    """The introduction's page: one row per claim, its paper source, chapter and overall verdict."""
    rows = []
    spec = claims(path)
    for cid, claim in spec.items():
        table = verdict_table(cid, path, directory, spec)
        rows.append({"claim": f"{cid}: {claim['claim']}", "paper": claim["paper"], "chapter": claim["chapter"],
                     "comparisons": len(table), "verdict": claim_verdict(table)})
    return pd.DataFrame(rows)


def verdict_caption(claim_id: str, path: str | Path = CLAIMS) -> str:
    """The caption of a chapter's verdict table: the claim, where the paper makes it, and the grids it reads."""
    claim = claims(path)[claim_id]
    grids = sorted({g for comp in claim["comparisons"] for g in comp["grids"]})
    return (f"{claim_id} ({claim['paper']}): {claim['claim']}. Ours: a - b paired by seed, mean [95% interval]; "
            f"records of {', '.join(f'`{g}`' for g in grids)} (book/claims.yaml).")
