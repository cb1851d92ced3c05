"""alknet.core.tls"""
