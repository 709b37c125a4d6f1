package probe

// RingBufferUse returns the bytes waiting in the shared ring buffer and
// its size, for the tracer's self-metrics.
func (p *Probe) RingBufferUse() (used, size int) {
	if p.reader == nil {
		return 0, 0
	}
	return p.reader.AvailableBytes(), p.reader.BufferSize()
}

// MaxSockets is the capacity of the socks map (Options.MaxSockets).
func (p *Probe) MaxSockets() int { return int(p.opts.MaxSockets) }
