"""What a run or a sweep found: agents played on their seeds (the held-out test), a
sweep's statistics, summary, tables and plots, and a PBT population's lineage."""
