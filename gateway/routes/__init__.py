"""One router per area of the public API, all under ``/v1``."""
