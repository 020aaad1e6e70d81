"""The Ray cluster: what it can hold (a trial that no node could ever place is refused
before it starts), and starting or joining it with the code shipped to its nodes."""
