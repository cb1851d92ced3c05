"""alknet.core.proxy"""
