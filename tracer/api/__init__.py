"""What library users import: ``Tracer`` and ``TracerCallback``."""
