"""Code every SimulTrain service stands on: protocol, models, data, training math."""
