"""One router per resource; every handler is parse -> service -> typed schema."""
