"""Knowledge-graph unlearning: splits of the graph, unlearning objectives and the inferability judge."""
