"""Offline HTML reports of out-of-fold results, with PNG figures (matplotlib).

One module an idea: `data` loads what a page shows from the runs' artefacts, `detection` and `classification` are the
two tasks' pages (analysis and figures), `figures` and `html` the plumbing they share. Which page an experiment gets
is its task's (`cxrdet.tasks`); a tuned ensemble gets the detection page.
"""
