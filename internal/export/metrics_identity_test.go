package export

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/conntracer/conntracer/internal/events"
)

// podNames is a resolver's table in miniature: cgroup id -> the pod's
// names, entries removed when the pod is deleted.
type podNames map[uint64]*events.CgroupInfo

func (p podNames) add(cg uint64, ns, pod, container string) {
	id := events.Identity{Namespace: ns, Pod: pod, Container: container, ContainerID: strings.Repeat(fmt.Sprintf("%02x", cg%256), 32)}
	p[cg] = &events.CgroupInfo{Path: fmt.Sprintf("/kubepods/pod%d/c", cg), Identity: id, Workload: id.Workload()}
}

func (p podNames) lookup(cg uint64) *events.CgroupInfo { return p[cg] }

// 1,000 pods created and deleted, 20 at a time, each busy while it lives:
// the process series stay at most K+1 per metric (the top K and "other"),
// a deleted pod's series vanish by the next scrape (its cgroup marked
// Gone), and counters never go
// down (the scraper checks after every round).
func TestPodChurnSeriesBounded(t *testing.T) {
	names := podNames{}
	const k = 5
	s := newScraper(t, MetricsOptions{TopProcesses: k, Identities: names.lookup})
	// Every round brings new pods, whose first increase falls outside
	// "series present in both scrapes": the node's sum cannot be checked
	// that way. No series may go down: still checked every round.
	s.noNodeCheck = true
	maxSeries := 0
	var live []uint64
	for round := range 50 {
		for _, cg := range live {
			g := *names[cg]
			g.Gone = true // as the resolver marks a removed cgroup
			names[cg] = &g
		}
		live = live[:0]
		for i := range 20 {
			n := uint64(round*20 + i + 1)
			cg := 1000 + n
			names.add(cg, "shop", fmt.Sprintf("checkout-%d", n), "api")
			live = append(live, cg)
			s.close(uint32(10000+n), "api", cg, 1+i%3)
		}
		cur := s.round(time.Second)
		pods := map[string]bool{}
		for key := range cur {
			if !strings.HasPrefix(key, "conntracer_connections_closed_total{") || !strings.Contains(key, `role="active"`) {
				continue
			}
			pods[key] = true
			if strings.Contains(key, `pod="checkout-`) {
				var n int
				fmt.Sscanf(key[strings.Index(key, `pod="checkout-`)+len(`pod="checkout-`):], "%d", &n)
				if n <= round*20 {
					t.Fatalf("round %d: series of deleted pod checkout-%d still exported: %s", round, n, key)
				}
				if !strings.Contains(key, `namespace="shop"`) || !strings.Contains(key, `container="api"`) {
					t.Errorf("series lacks the namespace or container label: %s", key)
				}
			}
		}
		maxSeries = max(maxSeries, len(pods))
	}
	// K of their own and "other".
	if maxSeries > k+1 {
		t.Errorf("up to %d closed_total{role=active} series in a scrape, want at most %d", maxSeries, k+1)
	}
	if maxSeries < k {
		t.Errorf("only %d series: the pods' own series never showed", maxSeries)
	}
}
