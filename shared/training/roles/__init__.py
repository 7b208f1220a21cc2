"""The roles of a run: what the edge computes for one batch, and what the cloud does with it.

Each role is one subclass of the edge runtime and one of the cloud runtime
(shared/training/runtime.py keeps what every role shares), chosen once, by the schedule's
`EdgeRole`, when the run is assembled (shared/training/assembly.py, ``ROLES``):

======================  ================================  =====================================
role                    edge                              cloud
======================  ================================  =====================================
split (simultrain,      edge-stage forward, ACT; backward  cloud step, GRAD; edge gradient into
split-sync)             from the GRAD, EGRAD              the master (`split`)
raw (centralized)       the raw batch in an ACT           the whole model trains on it (`raw`)
synthetic               forward, backward from M's         edge gradient, cloud step, M trained
                        synthetic cut gradient, EGRAD      on the true cut gradient
                        and ACT together (`synthetic`)     (`synthetic`)
whole-model gradient    the whole model's gradient         one step on the round's mean
(syncsgd)               (`lockstep`)                       (`lockstep`)
local steps (fedavg)    E local steps, the local model     the round's weighted average
gradient-coded          one coded gradient of its          decodes a round from the first
(syncsgd, s > 0)        partitions (`coded`)               n − s uploads (`coded`)
======================  ================================  =====================================
"""
