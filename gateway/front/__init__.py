"""How clients reach the engine: the HTTP handler and its fast path, HTTPS passthrough, the explicit proxy, tunnels."""
