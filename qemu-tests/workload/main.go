// The QEMU tests' Kubernetes workload: one static binary (CGO_ENABLED=0)
// that the harness packs into an OCI archive and seeds into the image, so
// the test needs no registry. It serves on :8080:
//
//	GET  /                    this pod's name and its node's name
//	GET  /fetch?url=U         fetches U and answers "<pod>@<node> -> <body>"
//	                          (pod-to-pod and Service checks from inside a pod)
//	GET  /file?path=P         the file P (reading the Gluster hostPath)
//	POST /file?path=P         writes the request body to P and fsyncs it
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func me() string {
	return os.Getenv("POD_NAME") + "@" + os.Getenv("NODE_NAME")
}

func main() {
	// A new connection per fetch: with keep-alive, every fetch of a Service
	// would reuse the first connection and so the backend kube-proxy
	// picked for it (conntrack), and a test asking until the other node's
	// pod answers would never see it.
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, me())
	})
	http.HandleFunc("/fetch", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, me()+" -> "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(w, "%s -> %s", me(), body)
	})
	http.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		if r.Method == http.MethodPost {
			f, err := os.Create(path)
			if err == nil {
				_, err = io.Copy(f, r.Body)
				if err == nil {
					err = f.Sync()
				}
				f.Close()
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, "written by", me())
			return
		}
		data, err := os.ReadFile(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(data)
	})
	if err := http.ListenAndServe(":8080", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
