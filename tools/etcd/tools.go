//go:build tools

// Package tools pins the etcd server this module builds; nothing here is compiled into armcpu.
package tools

import _ "go.etcd.io/etcd/server/v3"
