"""``cafusion compare``: paired ablations of attention blocks with statistics (see cli/compare.py).

config (settings, variants), sources (data per seed), plan (runs, shards, result files), runner
(one run), execute (many, with jobs), stats (scipy.stats), report (json/md/csv), plots (PNGs).
"""
