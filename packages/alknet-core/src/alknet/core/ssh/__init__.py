"""alknet.core.ssh"""
