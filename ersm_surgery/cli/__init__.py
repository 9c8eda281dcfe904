"""The ``ersm-surgery`` command line: thin click commands over the library."""
