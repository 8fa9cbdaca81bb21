"""Tests of mlci.serving (a package, so test module names cannot collide with other test directories)."""
