"""alknet.core.server"""
