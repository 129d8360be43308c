// Command kube-apiserver is the upstream Kubernetes API server, built from the
// Go module proxy for llmesh's end-to-end tests (see tests/controlplane/install.sh).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
