//go:build tools

// Package tools pins the helm CLI this module builds; nothing here is compiled into armcpu.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
