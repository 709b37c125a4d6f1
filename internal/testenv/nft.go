package testenv

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// NFT runs an nft script inside the namespace.
func NFT(t testing.TB, ns *NetNS, script string) {
	t.Helper()
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s\n%s", ns.Name, err, out, script)
	}
}

// NFTCounter returns the packets counted by the rule carrying comment.
func NFTCounter(t testing.TB, ns *NetNS, comment string) uint64 {
	t.Helper()
	out := ns.Output(t, "nft", "-j", "list", "ruleset")
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	for _, obj := range doc.Nftables {
		raw, ok := obj["rule"]
		if !ok {
			continue
		}
		var r struct {
			Comment string            `json:"comment"`
			Expr    []json.RawMessage `json:"expr"`
		}
		if err := json.Unmarshal(raw, &r); err != nil || r.Comment != comment {
			continue
		}
		for _, e := range r.Expr {
			var c struct {
				Counter *struct{ Packets uint64 } `json:"counter"`
			}
			if json.Unmarshal(e, &c) == nil && c.Counter != nil {
				return c.Counter.Packets
			}
		}
	}
	t.Fatalf("no counter on rule %q in:\n%s", comment, out)
	return 0
}

// RequireTool skips the test when a command it needs is not installed.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (apt-get install %s)", name, name)
	}
}

// TrackConntrack makes conntrack track the namespace's new flows (an nft
// `ct state new` rule in table inet name): conntrack is per namespace and
// only tracks one where a rule, NAT or a match needs it.
func TrackConntrack(t testing.TB, ns *NetNS, name string) {
	t.Helper()
	NFT(t, ns, "table inet "+name+" {\n\tchain out {\n\t\ttype filter hook output priority 0;\n\t\tct state new counter\n\t}\n}")
}
