package export

import (
	"bytes"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// gatherText renders reg in the text exposition format, the golden files'
// format, keeping only the named metrics if any are given.
func gatherText(reg *prometheus.Registry, names ...string) (string, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if len(names) > 0 && !slices.Contains(names, mf.GetName()) {
			continue
		}
		if err := enc.Encode(mf); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}
