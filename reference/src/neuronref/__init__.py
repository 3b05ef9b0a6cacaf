"""Code shared by the reference services; each package carries its own copy under /usr/lib/<package>/."""

VERSION = "1.0.0"
