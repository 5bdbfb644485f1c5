"""Fusion diagnostics: what the router, the gate and the temperature of each block do.

``FusionMonitor`` collects (torch only); ``export`` writes JSON/CSV/TensorBoard and ``plots``
draws matplotlib figures (both import their optional dependencies only when called).
"""

from cafusion.diagnostics.monitor import FusionMonitor
from cafusion.diagnostics.stats import BlockStats
from cafusion.diagnostics.table import format_table

__all__ = ["BlockStats", "FusionMonitor", "format_table"]
