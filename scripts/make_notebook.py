"""Write notebooks/quickstart.ipynb from the cells below.

The notebook is generated so that a change to it is reviewed here, as Python, rather than as
notebook JSON; it is committed without outputs. Run after editing:

    .venv/bin/python scripts/make_notebook.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"

CELLS = [
    ("md", """\
# bookrec from Python: a quick start

Synthetic BookCrossing-shaped data, the `Recommender` fitted from Python, a comparison with three
baselines, one reader's recommendations with their intervals and reasons, and the Gibbs sampler's
convergence traces.

`NOTEBOOK_PRESET` picks the data size: `small` (the default, a few thousand readers,
a minute or two) or `tiny` (a few hundred readers, seconds; the tests use it)."""),
    ("code", """\
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bookrec.data.synth import generate
from bookrec.model import Recommender
from bookrec.model.topn import evaluate_topn, holdout_split, interactions_from_dataset
from bookrec.model.topn_baselines import ALS, EASE, Popularity, interaction_matrix

PRESET = os.environ.get("NOTEBOOK_PRESET", "small")
SEED = 42
N = 10
# implicit (the ALS baseline) imports tqdm.auto, which warns when ipywidgets is absent.
warnings.filterwarnings("ignore", message="IProgress not found")"""),
    ("md", """\
## Data

One row per (reader, work): editions of a book are merged into a work, and rating 0 means the
reader touched the work without rating it. A fifth of each reader's interactions is held out."""),
    ("code", """\
dataset = generate(PRESET, seed=SEED).dataset
user_idx, item_idx, rating, users, items = interactions_from_dataset(dataset)
train, test = holdout_split(user_idx, item_idx, rating, fraction=0.2, seed=SEED)
n_users, n_items = len(users), len(items)
titles = dataset.books.drop_duplicates("work_key").set_index("work_key")["title"]
print(f"{n_users:,} readers, {n_items:,} works, {len(rating):,} interactions "
      f"({(rating > 0).mean():.0%} rated); {len(test[0]):,} held out")"""),
    ("md", """\
## Fit the recommender

The relevance model picks candidates from what a reader has read; the Bayesian rating model
(BPMF, Gibbs sampling) gives each candidate a predicted rating with an interval."""),
    ("code", """\
# Short chains on tiny keep the tests fast; they will not pass the convergence check.
chains = dict(n_samples=60, burn_in=40, n_factors=5) if PRESET == "tiny" else {}
rec = Recommender(seed=SEED, **chains).fit(*train, n_users=n_users, n_items=n_items)
rec"""),
    ("md", """\
## Compared with baselines

Each model ranks every work a reader has not touched in train; recall@10 and NDCG@10 count the
held-out works that come back in the top 10."""),
    ("code", """\
X = interaction_matrix(train[0], train[1], n_users, n_items)
popularity = np.asarray(X.sum(axis=0)).ravel()
eval_users = np.unique(test[0])

lists = {"bookrec": rec.recommend_all(eval_users, N)[0]}
for model in (Popularity(), EASE(), ALS(seed=SEED)):
    lists[model.name] = model.fit(X).recommend_all(eval_users, N)

rows = []
for name, recommended in lists.items():
    result = evaluate_topn(recommended, eval_users, test, rec.rating_range, popularity, ks=(N,), n_items=n_items)
    rows.append({"model": name, "recall@10": result.metrics["recall@10"], "ndcg@10": result.metrics["ndcg@10"]})
comparison = pd.DataFrame(rows).set_index("model")
comparison.round(3)"""),
    ("code", """\
ax = comparison.plot.bar(rot=0, figsize=(7, 3.5))
ax.set_ylabel("mean over held-out readers")
ax.set_title(f"Top-{N} accuracy on the {PRESET} preset");"""),
    ("md", """\
## One reader's recommendations

`mean`, `lower` and `upper` are the predicted rating and its 90% interval; the reason is the
work in the reader's history most associated with the recommendation."""),
    ("code", """\
reader = eval_users[0]
got, score, mean, lower, upper, because = (a[0] for a in rec.recommend_all([reader], N, return_reasons=True))
keep = got >= 0
work = items.values
table = pd.DataFrame({
    "title": titles.loc[work[got[keep]]].to_numpy(),
    "mean": mean[keep], "lower": lower[keep], "upper": upper[keep],
    "because you read": [titles.loc[work[b]] if b >= 0 else "" for b in because[keep]],
})
table.round(2)"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1))
y = np.arange(len(table))[::-1]
ax.errorbar(table["mean"], y, xerr=[table["mean"] - table["lower"], table["upper"] - table["mean"]],
            fmt="o", capsize=3)
ax.set_yticks(y, table["title"])
ax.set_xlim(rec.rating_range[0], rec.rating_range[1] + 0.2)  # room for the caps at the top of the scale
ax.set_xlabel("predicted rating (90% interval)")
ax.set_title(f"Reader {users.values[reader]}");"""),
    ("md", """\
## Convergence

Each chain's trace of a few sampler summaries, after burn-in. Chains that agree and mix well
look like overlapping noise with no trend."""),
    ("code", """\
traces = rec.rating_model_.traces_
names = ["train_rmse", "alpha", "mu", "log_norm_U"]
fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.6 * len(names)), sharex=True)
for ax, name in zip(axes, names):
    for c, chain in enumerate(traces[name]):
        ax.plot(chain, lw=0.8, label=f"chain {c}")
    ax.set_ylabel(name)
axes[0].legend(loc="upper right", fontsize="small")
axes[-1].set_xlabel("kept sweep")
fig.tight_layout()
diagnostics = rec.rating_model_.diagnostics_
print("converged" if diagnostics["converged"] else "NOT converged", "-", diagnostics["summary"])"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    # Fixed ids keep regenerating the notebook from unchanged cells a no-op in git.
    for n, cell in enumerate(nb.cells):
        cell.id = f"cell-{n:02d}"
    nbformat.validate(nb)
    return nb


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    nbformat.write(build(), OUT)
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
