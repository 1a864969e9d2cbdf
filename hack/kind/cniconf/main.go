// cniconf writes a node's CNI configuration from flannel's lease file, the job flannel's own CNI
// plugin does at every pod start (that plugin is not served by the Go module proxy).
//
// flanneld (host-gw backend) leases the node its pod subnets and routes the other nodes'
// subnets; this writes /etc/cni/net.d/10-flannel.conflist (bridge + host-local + portmap) for
// them and keeps it current. It runs as a second container of the flannel DaemonSet.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(s.Text()), "="); ok {
			env[k] = v
		}
	}
	return env, s.Err()
}

// network turns flannel's "10.244.1.1/24" (the gateway, with host bits) into "10.244.1.0/24".
func network(cidr string) (string, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return "", err
	}
	return n.String(), nil
}

func render(env map[string]string) ([]byte, error) {
	var ranges [][]map[string]string
	var routes []map[string]string
	for _, k := range []string{"FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"} {
		if env[k] == "" {
			continue
		}
		n, err := network(env[k])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		ranges = append(ranges, []map[string]string{{"subnet": n}})
		dst := "0.0.0.0/0"
		if strings.Contains(n, ":") {
			dst = "::/0"
		}
		routes = append(routes, map[string]string{"dst": dst})
	}
	if len(ranges) == 0 {
		return nil, fmt.Errorf("no FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET")
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "flannel",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true,
				"ipam": map[string]any{"type": "host-local", "ranges": ranges, "routes": routes},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

func writeAtomic(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func main() {
	subnetFile := flag.String("subnet-file", "/run/flannel/subnet.env", "flannel's lease file")
	confFile := flag.String("conf-file", "/etc/cni/net.d/10-flannel.conflist", "CNI config to write")
	every := flag.Duration("every", 5*time.Second, "how often to re-read the lease file")
	flag.Parse()
	var last []byte
	for ; ; time.Sleep(*every) {
		env, err := readEnv(*subnetFile)
		if err != nil {
			log.Printf("waiting for %s: %v", *subnetFile, err)
			continue
		}
		conf, err := render(env)
		if err != nil {
			log.Printf("%s: %v", *subnetFile, err)
			continue
		}
		if bytes.Equal(conf, last) {
			continue
		}
		if err := writeAtomic(*confFile, conf); err != nil {
			log.Printf("writing %s: %v", *confFile, err)
			continue
		}
		last = conf
		log.Printf("wrote %s:\n%s", *confFile, conf)
	}
}
