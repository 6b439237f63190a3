"""Green-list watermarks (KGW, Unigram, SWEET, EWD) and their detection statistics.

One module per scheme; :mod:`entroflow.watermark.green` is the single definition of "green" that
embedding and detection share. This package imports nothing heavy on import: import the
submodule you need (``from entroflow.watermark.kgw import KGW``).
"""
