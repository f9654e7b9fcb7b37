"""The report as text sections: the static report, the runs, the diagnosis."""
