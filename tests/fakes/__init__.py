"""Faithful fakes of the hardware the sensing backends talk to, so their tests run on x86.

- :mod:`tests.fakes.fake_gpio`: an ``RPi.GPIO`` stand-in with bit-exact simulated HX711 chips.
- :mod:`tests.fakes.fake_sysfs`: a kernel-IIO ``hx711`` sysfs tree in a temporary directory.
"""
