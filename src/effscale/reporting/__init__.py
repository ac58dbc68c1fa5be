"""From finished runs to tables, statistics, plots and the self-contained report."""
