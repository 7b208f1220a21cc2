"""The conformance kit: PROTOCOL.md's cases run against any edge client (docs/CONFORMANCE.md).

``simultrain conformance --client-cmd '…'`` starts a real cloud on 127.0.0.1 and, per case, a
recording proxy that injects one fault (:mod:`.proxy`) and one run of the client; the checks
(:mod:`.cases`) read what the client sent and when it stopped. :mod:`.kit` runs them.
"""
