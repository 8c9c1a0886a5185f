"""Custom features of the fraud use case (referenced from models/fraud.yaml, fn: python).

A function receives one numpy array per input (a request column or a feature) and returns one
array of the same length; the featurizer calls it identically at training and serving time.
"""

import numpy as np


def is_night(hour: np.ndarray) -> np.ndarray:
    """1 for transactions between 23:00 and 06:00 (the card holder is usually asleep)."""
    return ((hour < 6) | (hour == 23)).astype("float64")
