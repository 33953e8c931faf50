"""uniopt.torch: bindings of the uniopt spec to this framework's optimizer contract.

Placeholder: the adapter is built in a later milestone; importing it never changes the core.
"""
