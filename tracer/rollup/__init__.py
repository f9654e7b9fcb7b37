"""What was collected, rolled up into records: calls, modules, backward windows, stage times (one rule), the ranks merged."""
