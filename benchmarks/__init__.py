"""Side-by-side measurements against peers and physical limits; never part of the tests."""
