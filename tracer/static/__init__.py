"""The 8-step static structure report, found by walking the module tree; runs nothing, so it works on meta."""
