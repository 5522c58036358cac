"""What the tests share: helpers, imported from here, and fixtures, through the plugin
``tests.support.fixtures`` (and ``cli``, ``kinds``) that tests/conftest.py registers.

A test module never imports another test module (tests/test_suite_shape.py checks it): code two
test files need moves here.
"""
