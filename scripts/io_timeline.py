#!/usr/bin/env python3
"""Where the expert cache's reads overlap compute, from a CROSSMOE_IO_TRACE file.

    CROSSMOE_IO_TRACE=io.trace crossmoe bench MODEL --memory-budget 25% --runs 1 ...
    python3 scripts/io_timeline.py io.trace

Over the timed decodes (between bench's `note decode` and `note decode end`; the whole trace
when there are none) every instant is one of: the decoding thread waits for reads (stall), it
computes while reads are in flight (overlap), it computes while no read is in flight (disk
idle). Per token and per MoE layer: the stall of that layer's step, and the disk-idle time of the
stretch that begins when the layer's experts are ready (its expert compute, then everything up
to the next MoE step: the next layer's attention, or for the last MoE layer the rest of the
token, the LM head and the next token's first layers).
"""
import collections
import sys


def main(path):
    events = []
    for line in open(path):
        parts = line.split()
        if len(parts) >= 2:
            events.append((float(parts[0]), parts[1], parts[2:]))
    windows, start = [], None
    for t, kind, args in events:
        if kind == 'note' and args == ['decode']:
            start = t
        elif kind == 'note' and args == ['decode', 'end'] and start is not None:
            windows.append((start, t))
            start = None
    if not windows:
        windows = [(events[0][0], events[-1][0])]

    totals = collections.Counter()
    stall_by_layer = collections.Counter()
    idle_by_phase = collections.Counter()
    overlap_by_phase = collections.Counter()
    steps_by_layer = collections.Counter()
    tokens = 0
    for begin, end in windows:
        busy = waiting = False
        phase = current = None
        first_layer = None
        last = begin
        # The disk's state at the window's start: the last busy/idle before it.
        for t, kind, _ in events:
            if t > begin:
                break
            if kind == 'busy':
                busy = True
            elif kind == 'idle':
                busy = False
        for t, kind, args in events:
            if t <= begin:
                continue
            if t > end:
                t = end
            dt = t - last
            if waiting:
                totals['stall'] += dt
            elif busy:
                totals['overlap'] += dt
                overlap_by_phase[phase] += dt
            else:
                totals['disk idle'] += dt
                idle_by_phase[phase] += dt
            last = t
            if t >= end:
                break
            if kind == 'busy':
                busy = True
            elif kind == 'idle':
                busy = False
            elif kind == 'acquire':
                layer = int(args[0])
                waiting = True
                if layer >= 0:
                    if first_layer is None:
                        first_layer = layer
                    if layer == first_layer:
                        tokens += 1
                    steps_by_layer[layer] += 1
                    current = layer
            elif kind == 'ready':
                waiting = False
                stall_by_layer[current] += float(args[1])
                phase = current
    total = sum(totals.values())
    if tokens == 0 or total == 0:
        sys.exit('no decode steps in ' + path)
    print('%d tokens, %.1f ms a token: stall %.1f, compute with reads in flight %.1f, compute with the disk idle %.1f'
          % (tokens, total / tokens, totals['stall'] / tokens, totals['overlap'] / tokens, totals['disk idle'] / tokens))
    print('| MoE layer | stall of its step, ms / token | after its experts are ready: disk idle, ms / token | reads in flight, ms / token |')
    print('|---|---|---|---|')
    for layer in sorted(steps_by_layer):
        print('| %d | %.1f | %.1f | %.1f |' % (layer, stall_by_layer[layer] / tokens, idle_by_phase[layer] / tokens,
                                            overlap_by_phase[layer] / tokens))
    if idle_by_phase[None] or overlap_by_phase[None]:
        print('| before the first step | | %.1f | %.1f |' % (idle_by_phase[None] / tokens, overlap_by_phase[None] / tokens))


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
