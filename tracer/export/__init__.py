"""Files for other tools: the Chrome/Perfetto trace and the PNG plot."""
