//go:build tools

// Package kube pins the Kubernetes commands that hack/kube/build.sh compiles, so that
// `go mod tidy` keeps every module they need in go.mod/go.sum.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
