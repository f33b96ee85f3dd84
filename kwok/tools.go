//go:build tools

// Package tools names the command atoll builds from sigs.k8s.io/kwok, so that
// `go mod tidy` keeps every module it needs in go.mod and go.sum.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
