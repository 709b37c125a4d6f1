package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

// selfSignedCert writes a certificate for 127.0.0.1 and its key to dir
// and returns their paths and the certificate, for the client's pool.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "conntracer test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert
}

// TestMetricsTLSAndBasicAuth: with a web config file enabling TLS and
// basic auth, /metrics answers only over TLS and only to the right
// password. The server is the one every mode uses (listenMetrics), with a
// registry holding one test metric: no probe, no root needed.
func TestMetricsTLSAndBasicAuth(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, cert := selfSignedCert(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webCfg := filepath.Join(dir, "web.yml")
	yml := "tls_server_config:\n  cert_file: " + certFile + "\n  key_file: " + keyFile +
		"\nbasic_auth_users:\n  prometheus: " + string(hash) + "\n"
	if err := os.WriteFile(webCfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	w := webConfig{listen: "127.0.0.1:0", configFile: webCfg}
	if err := w.validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "conntracer_test_gauge", Help: "A test gauge."})
	g.Set(42)
	reg.MustRegister(g)
	var logs bytes.Buffer
	m, err := listenMetrics(w, reg, &logs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})

	pool := x509.NewCertPool()
	pool.AddCert(cert)
	tlsClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(c *http.Client, url, user, pass string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	https := "https://" + m.Addr().String()

	if code, _, err := get(tlsClient, https+"/metrics", "", ""); err != nil || code != http.StatusUnauthorized {
		t.Errorf("no credentials: %d %v, want 401", code, err)
	}
	if code, _, err := get(tlsClient, https+"/metrics", "prometheus", "wrong"); err != nil || code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d %v, want 401", code, err)
	}
	code, body, err := get(tlsClient, https+"/metrics", "prometheus", "s3cret")
	if err != nil || code != http.StatusOK || !strings.Contains(body, "conntracer_test_gauge 42") {
		t.Errorf("right password: %d %v, want 200 with the metric:\n%.300s", code, err, body)
	}
	// Plain HTTP gets no metrics: the TLS listener answers with an error.
	plain := &http.Client{Timeout: 5 * time.Second}
	if code, body, err := get(plain, "http://"+m.Addr().String()+"/metrics", "prometheus", "s3cret"); err == nil && strings.Contains(body, "conntracer_test_gauge") {
		t.Errorf("plain HTTP served metrics (%d)", code)
	}
	// The landing page links to /metrics.
	if code, body, err := get(tlsClient, https+"/", "prometheus", "s3cret"); err != nil || code != http.StatusOK || !strings.Contains(body, "metrics") {
		t.Errorf("landing page: %d %v", code, err)
	}
}

// TestWebFlagsValidation: a broken web config is refused at start-up with
// a message that says what to fix.
func TestWebFlagsValidation(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(bad, []byte("tls_server_config:\n  cert_file: /nonexistent.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := parseServeFlags([]string{"--web.config.file", bad}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--web.config.file") {
		t.Errorf("bad web config: %v", err)
	}
	_, err = parseServeFlags([]string{"--web.listen-address", ""}, io.Discard)
	if err == nil {
		t.Error("empty listen address accepted")
	}
	cfg, err := parseServeFlags(nil, io.Discard)
	if err != nil || cfg.web.listen != defaultListenAddress || cfg.web.metrics.TopProcesses != 20 {
		t.Errorf("defaults: %+v %v", cfg, err)
	}
	if _, err := parseTopFlags([]string{"--web.config.file", bad}, io.Discard); err == nil {
		t.Error("top: --web.config.file without --web.listen-address accepted")
	}
}
