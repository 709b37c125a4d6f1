package events

import "strconv"

// DropNames fills in the names of drop events: the reason's name from the
// running kernel's enum skb_drop_reason (read from BTF by the caller) and
// the location's symbol. Symbols are cached per address, so after the first
// drop at a site naming it does not allocate. Owned by the event loop.
type DropNames struct {
	reasons   map[uint32]string
	symbolize func(uint64) string
	cache     map[uint64]string
}

// NewDropNames names reasons with the given table (value -> name) and
// locations with symbolize (nil: hexadecimal addresses).
func NewDropNames(reasons map[uint32]string, symbolize func(uint64) string) *DropNames {
	return &DropNames{reasons: reasons, symbolize: symbolize, cache: make(map[uint64]string)}
}

// Apply names the reason and location of drop events in place.
func (n *DropNames) Apply(ev *Event) {
	switch ev.Kind {
	case KindDrop, KindDropCount:
	default:
		return
	}
	ev.Drop.ReasonName = n.Reason(ev.Drop.Reason)
	ev.Drop.Symbol = n.Symbol(ev.Drop.Location)
}

// Reason returns the name of a reason number ("reason N" if unknown).
func (n *DropNames) Reason(r uint32) string {
	if s, ok := n.reasons[r]; ok {
		return s
	}
	s := "reason " + strconv.FormatUint(uint64(r), 10)
	if n.reasons != nil {
		n.reasons[r] = s
	}
	return s
}

// Symbol returns the symbol of a kernel address, cached.
func (n *DropNames) Symbol(addr uint64) string {
	if s, ok := n.cache[addr]; ok {
		return s
	}
	var s string
	if n.symbolize != nil {
		s = n.symbolize(addr)
	} else {
		s = "0x" + strconv.FormatUint(addr, 16)
	}
	// Bounded by the number of places in the kernel that drop packets.
	n.cache[addr] = s
	return s
}
